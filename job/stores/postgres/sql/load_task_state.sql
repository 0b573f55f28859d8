-- One task's state, and the whole task_state (to tell a hand-edited column).
SELECT task_state -> %(task)s, task_state FROM aweber_job.connections WHERE name = %(name)s

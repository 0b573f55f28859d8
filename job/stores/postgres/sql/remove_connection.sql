-- Delete a connection this holder has just claimed (fenced).
DELETE FROM aweber_job.connections WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s

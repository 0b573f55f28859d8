"""A run: the keeper that holds a connection and spends its refresh token (:mod:`job.run.keeper`), one run
(:mod:`job.run.single`), ``run --all`` (:mod:`job.run.fleet`), and monitoring around them (:mod:`job.run.monitor`)."""

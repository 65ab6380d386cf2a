"""The schedule controller: owns the run's schedule and state (in Redis) and serves phases over HTTP.

Entry points: `app.create_app`, `server.main`; the trainer and rollout workers use `client.ControllerClient`.
"""

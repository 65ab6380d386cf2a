"""Verifiable-reward HTTP service: `reward_server.app.create_app(settings)` builds it, `reward_server.server.main`
runs it (`rlvr reward-server`, `python -m reward_server`). Scorers live in `reward_server.scorers`."""

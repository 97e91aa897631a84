"""Shared tracking on one machine: PostgreSQL, a SeaweedFS S3 store and an MLflow server, on 127.0.0.1.

`make services` starts the three for trying a team setup (docs/team.md); the tests in tests/team start
them on free ports through the same code. Needs the `team` extra (`make install-team`).
"""

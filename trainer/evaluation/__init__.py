"""Offline evaluation of a policy on a prompt set: the data it reads (`data.py`) and the metrics it reports
(`metrics.py`). Both are pure Python; the orchestration (model, reward server, report) is services/run/evaluate.py.
"""

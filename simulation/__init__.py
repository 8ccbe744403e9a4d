"""A simulated Mastodon fleet in moto, rolled by the real state machine and Lambda handlers.

Shared by the rollout tests (tests/pipeline/) and the benchmark (benchmarks/rollout.py);
it is neither shipped nor assembled into any Lambda function (lambdas/ never imports it).
It needs the test extra (moto).
"""

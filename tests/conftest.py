"""Agent tests import the App in-process: give them the in-memory store and one partition.

Integration tests never import the App; they pass a full environment to each
worker subprocess, so these defaults cannot leak into them.
"""

import os

os.environ.setdefault("APP_STORE", "memory://")
os.environ.setdefault("TOPIC_PARTITIONS", "1")
os.environ.setdefault("APP_ID", "velocity-agent-tests")

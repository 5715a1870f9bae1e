"""Example topic handler: the message payload arrives on stdin as bytes."""

import os
import sys

payload = sys.stdin.buffer.read()
print(f"message {os.environ['MESSAGE_ID']} on topic {os.environ['TOPIC']} "
      f"(attempt {os.environ.get('ATTEMPT', '1')}): {payload!r}", flush=True)

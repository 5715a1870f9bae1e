"""Helpers for the operations e2e tests: free ports, scraping /metrics, probes.

Metrics are fetched over real HTTP from a running ``supervisor run`` and parsed
with ``prometheus_client``'s own text parser, so what is checked is what
Prometheus would see.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from etcdvisor.etcd_server import free_port  # noqa: F401  (the harness's port picker)


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET ``url``; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


class Scrape:
    """One parsed /metrics answer: ``value(name, **labels)`` and ``samples(name)``."""

    def __init__(self, text: str):
        self.text = text
        self.samples_by_name: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples_by_name.setdefault(sample.name, []).append(sample)

    def samples(self, name: str, **labels) -> list:
        return [s for s in self.samples_by_name.get(name, [])
                if all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, default: float | None = 0.0, **labels) -> float | None:
        found = self.samples(name, **labels)
        return sum(s.value for s in found) if found else default


def scrape(port: int) -> Scrape | None:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    return Scrape(body) if status == 200 else None


def metric(port: int, name: str, default: float | None = 0.0, **labels) -> float | None:
    """One metric's value summed over matching series; None if the scrape failed."""
    result = scrape(port)
    return None if result is None else result.value(name, default, **labels)


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of a member's output, parsed (raises on a non-JSON line)."""
    docs = []
    for line in text.splitlines():
        if line.strip():
            try:
                docs.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"not a JSON log line: {line!r}") from exc
    return docs

"""The JSON Schema: shipped copy identical, closed objects, described keys, per-type keys."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from etcdvisor.config import schema_text
from etcdvisor.config.schema import ROLE_TYPES, TYPE_ONLY_KEYS

ROOT = Path(__file__).resolve().parents[2]
REPO_COPY = ROOT / "schemas" / "config.schema.json"
PACKAGED_COPY = ROOT / "src" / "etcdvisor" / "schemas" / "config.schema.json"
SCHEMA = json.loads(REPO_COPY.read_text())


def test_repository_and_packaged_copies_are_identical():
    assert REPO_COPY.read_bytes() == PACKAGED_COPY.read_bytes()


def test_loader_reads_the_packaged_copy():
    assert json.loads(schema_text()) == SCHEMA


def test_schema_is_valid_draft_2020_12():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _definitions(node, path=()):
    """Yield (path, schema) for every schema that defines properties, skipping the
    allOf constraint branches (they narrow keys that are defined elsewhere)."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            if key != "allOf":
                yield from _definitions(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _definitions(value, path + (index,))


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        name = ref.removeprefix("#/$defs/")
        return {**SCHEMA["$defs"][name], **schema}
    return schema


def test_every_object_is_closed():
    found = list(_definitions(SCHEMA))
    assert len(found) >= 6  # root, etcd, tls, member, role, backoff
    for path, node in found:
        assert node.get("additionalProperties") is False, path


def test_every_key_has_a_description():
    for path, node in _definitions(SCHEMA):
        for key, prop in node["properties"].items():
            assert _resolve(prop).get("description"), path + (key,)


def _role(role_type: str, **extra) -> dict:
    role = {"type": role_type, "command": ["x"], **extra}
    if role_type == "cron":
        role.setdefault("schedule", "@daily")
    return role


SAMPLES = {"settle": 1, "standby": True, "schedule": "@daily", "timezone": "UTC", "starting_deadline": 5,
           "topic": "t", "delivery": "queue", "max_payload": 10, "max_attempts": 2,
           "handoff": "fenced", "children": "per-shard", "processes": 2, "shards": 2,
           "rollout": {"max_unavailable": 1}}


@pytest.mark.parametrize("key", sorted(TYPE_ONLY_KEYS))
@pytest.mark.parametrize("role_type", ROLE_TYPES)
def test_type_only_keys_match_the_schema(key, role_type):
    value = SAMPLES.get(key, "forbid" if role_type == "cron" else 2)
    document = {"cluster": "c", "roles": {"r": _role(role_type, **{key: value})}}
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document))
    rejected = [e for e in errors if list(e.absolute_path) == ["roles", "r", key]]
    assert bool(rejected) == (role_type not in TYPE_ONLY_KEYS[key]), [e.message for e in errors]


def test_role_type_enum_matches_the_code():
    assert tuple(SCHEMA["$defs"]["role"]["properties"]["type"]["enum"]) == ROLE_TYPES


def test_reference_documents_every_key():
    reference = (ROOT / "docs" / "config-reference.md").read_text()
    for path, node in _definitions(SCHEMA):
        for key in node["properties"]:
            if key == "password":
                assert "literal `password:` key is refused" in reference
                continue
            assert any(form in reference for form in (f"`{key}`", f".{key}`", f"`{key}.")), path + (key,)

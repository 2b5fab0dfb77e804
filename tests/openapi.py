"""An OpenAPI document as data, for the contract tests of both APIs: the chain's
(docs/chain-openapi.yaml) and syncd's POS API (docs/pos-openapi.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DOCS = Path(__file__).resolve().parents[1] / "docs"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
Operations = dict[tuple[str, str], dict[str, Any]]


def load(name: str) -> tuple[Path, dict[str, Any]]:
    """(path, document) of docs/`name`."""
    spec = DOCS / name
    return spec, yaml.safe_load(spec.read_text())


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """`node` with every local $ref replaced by what it names (the documents have no
    cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(doc, target)
        return {k: resolve(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(doc, v) for v in node]
    return node


def operations(doc: dict[str, Any]) -> Operations:
    """(METHOD, path template) -> the operation, resolved."""
    return {
        (method.upper(), path): resolve(doc, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def merged(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """allOf's branches as one object schema (properties merged, deeply)."""
    out: dict[str, Any] = {}
    for s in schemas:
        s = merged(s["allOf"]) if "allOf" in s else s
        for key, value in s.items():
            if key == "properties" and key in out:
                props = dict(out[key])
                for name, sub in value.items():
                    props[name] = merged([props[name], sub]) if name in props else sub
                out[key] = props
            elif key == "required" and key in out:
                out[key] = sorted({*out[key], *value})
            else:
                out.setdefault(key, value)
    return out


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and says
    nothing else: the document stays open to additions, the test catches undocumented ones."""
    if not isinstance(schema, dict):
        return schema
    if "allOf" in schema:
        schema = merged([{k: v for k, v in schema.items() if k != "allOf"}, *schema["allOf"]])
    out = {k: strict(v) if k in ("items", "additionalProperties") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    return out


def error_codes(ops: Operations) -> list[tuple[str, str, int, list[str]]]:
    """(method, path, status, x-error-codes) of every error answer; a success lists none,
    every error lists some."""
    found = []
    for (method, path), op in ops.items():
        for status, response in op["responses"].items():
            codes = response.get("x-error-codes")
            if int(status) < 400:
                assert codes is None, (method, path, status)
                continue
            assert codes, f"{method} {path} {status} lists no x-error-codes"
            found.append((method, path, int(status), codes))
    return found

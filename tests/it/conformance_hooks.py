"""Schemathesis hooks of the conformance test (tests/it/conformance.rs).

An admin token may delete any user and revoke any token, and the fuzzer deletes what it finds
(the stateful phase follows links from a listing to a deletion). What the harness checks the
results with must survive it, and so must the token each pass runs with (revoked, it would leave
the rest of the budget to 401s): before every request, a path or query parameter or a JSON body
string that holds a protected user name or token id (CONFORMANCE_PROTECTED, comma-separated) is
replaced by a name nobody has, so the request answers 404 instead of reaching it. Only names and
token ids are listed there, never a token.
"""

import os

import schemathesis

PROTECTED = [p.lower() for p in os.environ.get("CONFORMANCE_PROTECTED", "").split(",") if p]
ABSENT = "absent-protected-by-harness"


def _reaches(value):
    # Containment, not equality: a token id may be given inside a longer string (a masked token),
    # and the server may trim or fold case.
    return isinstance(value, str) and any(p in value.lower() for p in PROTECTED)


def _scrub(body):
    if isinstance(body, dict):
        return {k: _scrub(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_scrub(v) for v in body]
    return ABSENT if _reaches(body) else body


def _rules_no_schema_states(body):
    """Rules across fields or items that JSON Schema cannot state, made true of a generated body
    so that the check that valid data is accepted tests the rest: the names of one batch differ,
    max_ttl is not shorter than ttl, and an ssh-public-key secret's value would have to parse as
    a key (generated text never does, so such a secret becomes a custom one)."""
    items = None
    if isinstance(body, list):
        items = body
    elif isinstance(body, dict) and isinstance(body.get("secrets"), list):
        items = body["secrets"]
    if items is not None:
        seen = set()
        for i, item in enumerate(items):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                if item["name"] in seen:
                    item["name"] = f"{item['name']}_{i}"[:253]
                seen.add(item["name"])
    for item in (items or []) + [body]:
        if isinstance(item, dict) and item.get("kind") == "ssh-public-key":
            item["kind"] = "custom"
    if isinstance(body, dict) and "ttl" in body and "max_ttl" in body:
        body["max_ttl"] = body["ttl"]
    return body


@schemathesis.hook
def before_call(context, case, kwargs):
    case.body = _rules_no_schema_states(case.body)
    for container in (case.path_parameters, case.query):
        for name, value in list((container or {}).items()):
            if _reaches(value):
                container[name] = ABSENT
    if isinstance(case.body, (dict, list)):
        case.body = _scrub(case.body)

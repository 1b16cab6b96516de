#!/usr/bin/env python3
"""A workload as secretfs delivers secrets to it: reads each expected variable from os.environ,
follows every *_FILE variable to its file, checks that both ways agree, and reports the names it
received. It never prints a value. Exits 1 if anything expected is missing or disagrees.

usage: workload.py NAME [NAME...]     (default: HF_TOKEN HF_TOKEN_FILE)
"""
import os
import sys


def main(expected):
    problems = []
    for name in expected:
        if name not in os.environ:
            problems.append(f"{name} is not set")
            continue
        if name.endswith("_FILE"):
            path = os.environ[name]
            try:
                with open(path, "rb") as f:
                    from_file = f.read()
            except OSError as e:
                problems.append(f"{name} points at {path}, which cannot be read: {e.strerror}")
                continue
            if not from_file:
                problems.append(f"{name} points at an empty file")
                continue
            base = name[: -len("_FILE")]
            if base in os.environ:
                if os.environb[base.encode()] != from_file:
                    problems.append(f"{base} in os.environ and the file {name} points at differ")
                    continue
                print(f"workload: {name} -> {path}: same value as os.environ[{base!r}]")
            else:
                print(f"workload: {name} -> {path}: readable")
        else:
            if not os.environ[name]:
                problems.append(f"{name} is empty")
                continue
            print(f"workload: {name} read from os.environ")
    for p in problems:
        print(f"workload: MISSING: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"workload: ok, {len(expected)} variables received")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["HF_TOKEN", "HF_TOKEN_FILE"]))

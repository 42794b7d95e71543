"""`kubetune crd`: print the FineTuneJob CRD generated from the API models."""

from __future__ import annotations

import argparse

HELP = "Print the FineTuneJob CustomResourceDefinition (generated from the API models) as YAML."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def run(args: argparse.Namespace) -> int:
    from kubetune.crd import crd_yaml

    print(crd_yaml(), end="")
    return 0

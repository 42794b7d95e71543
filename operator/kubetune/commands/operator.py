"""`kubetune operator [-n NAMESPACE ...] [--standalone]`: run the operator (kopf) in the foreground."""

from __future__ import annotations

import argparse

HELP = "Run the kubetune operator: reconcile FineTuneJobs into GPU Jobs (cluster-wide or per namespace)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NAMESPACE",
        help="watch only this namespace; repeatable (default: KUBETUNE_WATCH_NAMESPACES, else all namespaces)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering with other replicas (development and tests); by default replicas elect one to act",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logs")


def run(args: argparse.Namespace) -> int:
    import logging

    import kopf

    from kubetune.manifest_files import CliError
    from kubetune.settings import SettingsError

    try:
        from kubetune import handlers
    except SettingsError as error:
        raise CliError(str(error)) from None

    config = handlers.SETTINGS
    namespaces = args.namespace or list(config.watch_namespaces)
    kopf.configure(
        debug=args.verbose,
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.verbose:
        # kopf logs a line per handler call (every Job and pod event): only its warnings and errors are kept.
        # The operator logs each FineTuneJob transition itself (reconcile.py), once.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=args.standalone,
        # A peering name makes peering mandatory in kopf, which would override --standalone.
        peering_name=None if args.standalone else config.peering_name,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
    )
    return 0

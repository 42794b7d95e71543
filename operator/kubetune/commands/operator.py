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


def check_credentials() -> None:
    """CliError unless an in-cluster service account or a kubeconfig gives credentials: without them kopf
    would fail its startup with two tracebacks."""
    import os

    import kopf

    from kubetune.kube import credentials
    from kubetune.manifest_files import CliError

    kubeconfig = os.environ.get("KUBECONFIG", "~/.kube/config")
    try:
        found = credentials(kopf.OperatorSettings())
    except Exception as exc:  # a kubeconfig that is missing, not YAML, or without a current context
        reason = " ".join(str(exc).split())  # one line: YAML errors span several
        raise CliError(f"cannot use the kubeconfig {kubeconfig}: {type(exc).__name__}: {reason}") from None
    if found is None:
        raise CliError(f"no Kubernetes credentials: no in-cluster service account and no kubeconfig at {kubeconfig}; "
                       "set KUBECONFIG to a kubeconfig file (or run the operator in a pod)")


def run(args: argparse.Namespace) -> int:
    import logging

    import kopf

    from kubetune.manifest_files import CliError
    from kubetune.settings import SettingsError

    try:
        from kubetune import handlers
    except SettingsError as error:
        raise CliError(str(error)) from None

    check_credentials()
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

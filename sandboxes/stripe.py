"""The Stripe sandbox: localstripe (a Stripe API fake) on loopback, its store kept in memory.

``bizosaas dev`` runs it (``python -m sandboxes.stripe --port P``) unless
``BIZ_STRIPE_API_KEY`` names a real Stripe account; the tests run it too. localstripe keeps its
state in a fixed ``/tmp/localstripe.pickle`` and binds every interface; here the store stays in
memory (parallel stacks never share or clobber it) and only loopback is bound. localstripe
accepts any ``sk_test_...`` key.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.stripe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args(argv)

    import localstripe.resources as resources

    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None
    from aiohttp import web
    from localstripe.server import app

    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

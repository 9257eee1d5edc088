"""`dept-vl-demo`: serve adapters in the Gradio demo (dept_vl/demo.py), on the backbone they
record or on --backbone DIR. Also `python -m dept_vl.demo` and `python demo/app.py`.

    dept-vl-demo                                   # what the quickstart produced
    dept-vl-demo --adapter vqa=DIR --adapter caption=DIR [--port 7860]
    dept-vl-demo --backbone DIR --adapter vqa=DIR     # another copy of the trained-on backbone

Where it listens: --host / --port, else gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else
127.0.0.1:7860. Startup errors (a missing backbone or adapter, a bad --adapter or
GRADIO_SERVER_PORT) are one line `dept_vl: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from dept_vl.demo import (
    DEFAULT_ADAPTERS, DEFAULT_EXAMPLES, DEFAULT_HOST, DEFAULT_PORT, DemoError, DemoService,
    build_demo, corpus_examples, launch,
)
from dept_vl.errors import run_cli


def parse_adapters(values: list[str] | None) -> dict[str, str]:
    """`NAME=DIR` arguments → {name: dir}; none → the quickstart's adapters."""
    if not values:
        return dict(DEFAULT_ADAPTERS)
    adapters = {}
    for value in values:
        name, eq, directory = value.partition("=")
        if not eq or not name.isidentifier() or not directory:
            raise DemoError(f"--adapter {value!r}: expected NAME=DIR with NAME an identifier, "
                            "e.g. --adapter vqa=runs/quickstart/vqa/adapter")
        adapters[name] = directory
    return adapters


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse type of --port)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return port


def server_address(host: str | None, port: int | None,
                   environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """Where to listen: the --host / --port flags, else gradio's own GRADIO_SERVER_NAME /
    GRADIO_SERVER_PORT environment variables, else 127.0.0.1:7860 (this machine only)."""
    host = host or environ.get("GRADIO_SERVER_NAME", "").strip() or DEFAULT_HOST
    if port is not None:
        return host, port
    raw = environ.get("GRADIO_SERVER_PORT", "").strip()
    if not raw:
        return host, DEFAULT_PORT
    try:
        return host, port_number(raw)
    except argparse.ArgumentTypeError as error:
        raise DemoError(f"environment variable GRADIO_SERVER_PORT: {error}; unset it or pass "
                        "--port") from None


def main(argv: list[str] | None = None) -> None:
    """The demo's command line; a startup error is raised (a UserError), see `cli`."""
    parser = argparse.ArgumentParser(prog="dept-vl-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="backbone directory, or `builtin` (the one shipped in "
                        "the package); default: the one the adapters record")
    parser.add_argument("--adapter", action="append", metavar="NAME=DIR",
                        help="an adapter to serve (repeatable); default: the quickstart's")
    parser.add_argument("--examples", default=DEFAULT_EXAMPLES,
                        help="built-in corpus folder to take example images from")
    parser.add_argument("--host", help="default: $GRADIO_SERVER_NAME, else 127.0.0.1")
    parser.add_argument("--port", type=port_number,
                        help="default: $GRADIO_SERVER_PORT, else 7860")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="requests answered together in one mixed-adapter batch")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting at most")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.max_queue < 1:
        parser.error("--max-batch-size and --max-queue must be at least 1")
    host, port = server_address(args.host, args.port)
    service = DemoService(args.backbone, parse_adapters(args.adapter), args.max_batch_size)
    kinds = {name: service.model.adapter_task(name) for name in service.model.adapters}
    demo = build_demo(service, corpus_examples(args.examples, kinds), args.max_queue)
    launch(demo, host, port)


def cli() -> None:
    """`dept-vl-demo`, `python -m dept_vl.demo` and `python demo/app.py`: a startup error is
    one line on stderr and exit code 2; a bug keeps its traceback."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()

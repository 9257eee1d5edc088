"""The Gradio demo, run from a checkout: `python demo/app.py [--backbone DIR --adapter NAME=DIR]`.

The app lives in `dept_vl/demo.py` and its command line in `dept_vl/cli/demo.py`, inside the
installed package, so that the `dept-vl-demo` console script and `python -m dept_vl.demo` run
the same code.
"""

from dept_vl.cli.demo import cli

if __name__ == "__main__":
    cli()

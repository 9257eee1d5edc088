"""`accelerate launch dept_vl/train.py ...` and `torchrun ... dept_vl/train.py ...`: the script
form of `dept-vl-train` (dept_vl/cli/train.py), for launchers that take a file."""

if __name__ == "__main__":
    from dept_vl.cli.train import cli

    cli()

"""The ``sciml`` command: parses, dispatches, and turns errors into one-paragraph messages.

Expected problems (bad config, missing file, corrupt data, diverged training) are
:class:`~sciml.errors.SciMLError`s: printed without a traceback, non-zero exit. ``--debug``
shows the traceback of any error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from .errors import ConfigError, SciMLError

EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command. The subcommands' copy defaults to SUPPRESS
    # so that a subcommand not given --debug does not reset `sciml --debug COMMAND` to False.
    debug_help = "show full tracebacks and Lightning's logs"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)

    p = argparse.ArgumentParser(prog="sciml", description="Physics-informed scientific machine learning.")
    p.add_argument("--debug", action="store_true", help=debug_help)
    p.add_argument("--version", action="version", version=f"sciml {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def experiment_command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, parents=[common], description=help)
        c.add_argument("config", metavar="EXPERIMENT.yaml")
        c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=200 model.hidden=[32,32]")
        c.add_argument("--out", help="run folder (default runs/NAME, or runs/NAME-quick with --quick)")
        c.add_argument("--quick", action="store_true", help="shrink the experiment to a smoke-test size (the config's `quick` overrides)")
        return c

    experiment_command("run", "data -> train -> evaluate -> report, for one experiment config")
    experiment_command("train", "train only (writes config.yaml and checkpoints/ into the run folder)")

    e = sub.add_parser("evaluate", help="evaluate a run folder (metrics.json and plots)", parents=[common])
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--checkpoint", help="checkpoint to evaluate (default RUN_DIR/checkpoints/last.ckpt)")

    pr = sub.add_parser("predict", help="predict from a checkpoint on the grid of an HDF5 dataset, to HDF5", parents=[common])
    pr.add_argument("checkpoint", metavar="CHECKPOINT")
    pr.add_argument("--data", required=True, help="HDF5 dataset whose grid to predict on")
    pr.add_argument("--out", required=True, help="output HDF5 file")

    d = sub.add_parser("data", help="generate and inspect datasets", parents=[common])
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    g = dsub.add_parser("generate", help="generate a named dataset into HDF5", parents=[common])
    g.add_argument("name", nargs="?", metavar="NAME")
    g.add_argument("params", nargs="*", metavar="key=value", help="generator parameters, e.g. beta=30 nx=512 (see --list)")
    g.add_argument("--list", action="store_true", help="list the generators and their parameters")
    g.add_argument("--out", help="output file (default data/NAME.h5)")
    g.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1, help="local processes to fan the samples out over (default 1: in this process); with --ray-address, Ray tasks at a time")
    g.add_argument("--ray-address", help="address of a running Ray cluster to generate on (default: local processes)")
    i = dsub.add_parser("info", help="validate a dataset file against the schema and summarise it", parents=[common])
    i.add_argument("file", metavar="FILE")
    x = dsub.add_parser("xdmf", help="export one sample of a mesh dataset to XDMF for ParaView (needs the fem extra)", parents=[common])
    x.add_argument("file", metavar="FILE")
    x.add_argument("--out", help="output .xdmf (default FILE-sampleK.xdmf; DOLFINx writes the values to the .h5 of the same stem)")
    x.add_argument("--sample", type=int, default=0, help="which sample (default 0)")

    b = sub.add_parser("bench", help="side-by-side benchmarks against peers (see benchmarks/RESULTS.md)", parents=[common])
    b.add_argument("name", metavar="NAME", help="constraint (our layer vs cvxpylayers; also runs solver), solver (our PI-HC solve vs optimistix, MoE scaling), conservation (ProbConserv update vs the dense formula), data (generation throughput) or fields (Navier-Stokes basis fields vs a complex FFT pair per field)")
    b.add_argument("--quick", action="store_true", help="a reduced size that runs in a few minutes on a CPU")
    b.add_argument("--out", default="benchmarks/results", help="folder for NAME.json and NAME.md (default benchmarks/results)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: all cores)")
    b.add_argument("--device", default="cpu", help="cpu (default) or cuda[:K]: where ours and the peer run (solver only)")
    b.add_argument("--sections", help="comma-separated parts to run (solver: versus_optimistix, moe_scaling, layer_fields, moe_training, newton_steps; default all)")
    r = sub.add_parser("pretrained", help="pretrained solvers (reserved; not available in this version)", parents=[common])
    r.add_argument("args", nargs="*")
    return p


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore")
    import lightning  # noqa: F401  (it sets its loggers to INFO on import; quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


# glibc's mallopt parameters: the free memory at the heap's top that is kept rather than returned to
# the kernel, and how many allocations may be mapped fresh from it.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_large_allocations() -> bool:
    """Serve every allocation from glibc's reused heap and keep up to 2 GB free at its top
    (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``: what
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` do), unless the environment says
    otherwise: glibc maps each allocation above 32 MB fresh from the kernel and unmaps it when
    freed, so every training step pays the page faults of its large tensors again (half the CPU
    time in the kernel while training Navier-Stokes at CPU scale; benchmarks/RESULTS.md). The
    price: the process keeps the memory it has used. ``SCIML_MALLOC=system`` (or any
    ``MALLOC_MMAP_MAX_``) leaves glibc's default. True where applied (Linux with glibc); the
    same variables are then exported, so child processes (a benchmark's subprocesses, local Ray
    workers) run under the setting too."""
    import ctypes
    import platform

    if os.environ.get("SCIML_MALLOC", "").lower() == "system" or "MALLOC_MMAP_MAX_" in os.environ:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
    if applied:
        os.environ["MALLOC_MMAP_MAX_"], os.environ["MALLOC_TRIM_THRESHOLD_"] = "0", str(2**31 - 1)
    return applied


def _parse_params(items: Sequence[str]) -> dict:
    import yaml

    from .config import parse_override

    params = {}
    for key, value in (parse_override(item, example="beta=30") for item in items):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the value of PDE parameter `{key}` (={value!r}) is not valid YAML; give a number, a string or a list such as [1, 2].") from exc
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; it is a number on a command line
            try:
                parsed = float(parsed) if parsed.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else parsed
            except ValueError:
                pass
        params[key] = parsed
    return params


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "train"):
        from .pipeline import run_experiment

        result = run_experiment(args.config, out=args.out, quick=args.quick, overrides=args.overrides, evaluate=args.command == "run")
        _report(result)
    elif args.command == "evaluate":
        from .pipeline import evaluate_run

        _report(evaluate_run(args.run_dir, args.checkpoint))
    elif args.command == "predict":
        from .pipeline import predict_to_file

        print(f"wrote {predict_to_file(args.checkpoint, args.data, args.out)}")
    elif args.command == "data" and args.data_command == "generate":
        from .data.generators import describe_generators, generate

        if args.list or not args.name:
            print(describe_generators())
            return 0
        out = args.out or os.path.join("data", f"{args.name}.h5")
        path = generate(args.name, out, n=args.n, seed=args.seed, params=_parse_params(args.params), workers=args.workers, ray_address=args.ray_address)
        print(f"wrote {path}")
    elif args.command == "data" and args.data_command == "info":
        from .data.schema import summarize

        print(summarize(args.file))
    elif args.command == "data" and args.data_command == "xdmf":
        from .data.xdmf import export_xdmf

        out = args.out or f"{os.path.splitext(args.file)[0]}-sample{args.sample}.xdmf"
        print(f"wrote {export_xdmf(args.file, out, sample=args.sample)}")
    elif args.command == "bench":
        from .bench import run_benchmark
        from .pipeline import set_threads

        if args.threads < 0:
            raise ConfigError(f"--threads (={args.threads}) must be >= 0 (0: all cores).")
        set_threads(args.threads)
        sections = None if args.sections is None else [part.strip() for part in args.sections.split(",") if part.strip()]
        run_benchmark(args.name, quick=args.quick, out_dir=args.out, device=args.device, sections=sections)
    else:
        raise SciMLError(f"`sciml {args.command}` is reserved but not available in sciml {__version__} yet.")
    return 0


def _report(result: dict) -> None:
    metrics = result.get("metrics")
    if metrics:
        main = ("rel_l2", "nrmse", "mse", "max_abs_err")
        # Comparisons name their metrics model/metric[_set]: show each model's main ones.
        shown = []
        for k, v in metrics.items():
            last = k.rpartition("/")[2]
            if any(last == m or last.startswith(f"{m}_") for m in main) and "_se" not in last and "_std" not in last:
                shown.append(f"{k}={v:.4g}")
        shown = shown if len(shown) <= 12 else shown[:12] + [f"... ({len(shown) - 12} more in metrics.json)"]
        print(f"{result['experiment']}: {', '.join(shown)}")
    else:
        print(f"{result['experiment']}: trained {result.get('steps')} steps in {result['seconds']['train']:.1f} s")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` items may also follow the options
    (``sciml run X.yaml --quick k=v``), which a plain argparse positional list would refuse."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    free = getattr(args, "overrides", getattr(args, "params", None))
    if extra and free is not None and not any(e.startswith("-") for e in extra):
        free.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _paragraph(text: str) -> str:
    """Library messages can span lines (h5py, jsonargparse); a user gets one paragraph."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    _quiet_libraries(args.debug)
    keep_large_allocations()
    try:
        return _dispatch(args)
    except SciMLError as exc:
        if args.debug:
            raise
        print(f"error: {_paragraph(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: no file was left half-written; rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # an unexpected failure: short message, traceback with --debug
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename:
            # a path given that cannot be read or written: the user's to fix, not a bug
            print(f"error: cannot use {exc.filename}: {exc.strerror}. Check the paths given (--out, --data, the config's files): a "
                  "folder where a file is expected or the other way round, a missing parent folder, or no permission.", file=sys.stderr)
            return ConfigError.exit_code
        print(f"error: unexpected {type(exc).__name__}: {_paragraph(str(exc)).rstrip('.')}. Rerun with --debug for the traceback "
              "and report it if it looks like a bug.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Runs each benchmark in turn (each prints its own side-by-side ratios). ``--quick`` uses tiny sizes
and checks the harness, not the timings (CI runs it); full figures go in BENCHMARKS.md with their
command. ``avalanche_compare`` says "skipped" when Avalanche is not installed; ``cotta_reference``,
``tent_reference``, ``rmt_reference``, ``tta_reference`` and ``itta_reference`` when no clone of the
authors' code is given ($CL_COTTA_REFERENCE, $CL_TENT_REFERENCE, $CL_RMT_REFERENCE, $CL_TTA_REFERENCE,
$CL_ITTA_REFERENCE). Benchmarks that need ../shared data or weights (tta_cifar10c, cl_split_cifar10,
vit_cifar10_prompts, corruption_golden) are run on their own.
"""
import argparse
import importlib
import time

SUITE = ["runner_overhead", "augment_throughput", "buffer_memory", "eval_cost", "tta_batch_time",
         "corruption_throughput", "streaming_prefetch", "channels_last", "avalanche_compare", "cotta_reference",
         "tent_reference", "rmt_reference", "tta_reference", "itta_reference", "profile_hot_paths", "lm_tokens_per_s",
         "lm_rewarm_grid", "gpu_suite"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=SUITE, default=SUITE)
    args = p.parse_args(argv)
    for name in args.only:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main(["--quick"] if args.quick else [])
        print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()

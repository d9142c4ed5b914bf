"""Turn pytest-benchmark JSON into benchmarks/RESULTS.md: every number comes from the JSON.

    pytest benchmarks/test_bench_ops.py --benchmark-only --benchmark-json=bench.json
    python benchmarks/write_results.py bench.json [--out benchmarks/RESULTS.md]

The header records the device, driver, CUDA, torch and triton versions (benchmarks/conftest.py
stores them in the JSON's machine_info) and the run's date. Speed-ups are ratios of mean times
within the same JSON, against the eager fp32 and eager bf16 references of the same case.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

PROVIDER_ORDER = ["reference-fp32", "reference-bf16", "reference-compile", "triton"]
MODE_ORDER = ["fwd", "bwd", "full"]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _ratio(baseline: float | None, mean: float) -> str:
    return f"{baseline / mean:.2f}×" if baseline else "–"


def render(data: dict) -> str:
    info = data["machine_info"].get("taskadapter_fast", {})
    cpu = data["machine_info"].get("cpu", {}).get("brand_raw", "unknown CPU")
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/write_results.py` from pytest-benchmark JSON; do not edit by hand.",
        "",
        "| | |",
        "| --- | --- |",
        f"| device | {info.get('device', 'unknown')} |",
        f"| driver | {info.get('driver', 'unknown')} |",
        f"| CUDA (torch build) | {info.get('cuda', 'unknown')} |",
        f"| torch | {info.get('torch', 'unknown')} |",
        f"| triton | {info.get('triton', 'unknown')} |",
        f"| host CPU | {cpu} ({data['machine_info'].get('cpu', {}).get('count', '?')} cores) |",
        f"| date | {data.get('datetime', 'unknown')} |",
        f"| commit | {data.get('commit_info', {}).get('id', 'unknown')}"
        f"{' (dirty)' if data.get('commit_info', {}).get('dirty') else ''} |",
        "",
        "Times are over the timed rounds (ms); a stddev close to the mean marks a noisy (shared) machine.",
        "GB/s and TFLOP/s count the bytes and matmul FLOPs the op needs at least (benchmarks/test_bench_ops.py",
        "says how); peak MiB is the CUDA memory of one fwd + bwd step above its inputs. Speed-ups are against",
        "the eager fp32 and eager bf16-autocast references of the same case in this run. Cases missing from",
        "a table were skipped in this run (the pytest output says why).",
    ]
    by_op: dict[str, list[dict]] = defaultdict(list)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        if "op" in bench["extra_info"]:
            by_op[bench["extra_info"]["op"]].append(bench)
        else:
            by_group[bench.get("group") or bench["fullname"].split("::")[0]].append(bench)
    for op, benches in sorted(by_op.items()):
        means = {
            (b["extra_info"]["shape"], b["extra_info"]["mode"], b["extra_info"]["provider"]): b["stats"]["mean"]
            for b in benches
        }
        benches.sort(
            key=lambda b: (
                b["extra_info"]["shape"],
                MODE_ORDER.index(b["extra_info"]["mode"]),
                PROVIDER_ORDER.index(b["extra_info"]["provider"]),
            )
        )
        lines += [
            "",
            f"## {op}",
            "",
            "| shape | mode | provider | mean ms | median ms | stddev ms | rounds | GB/s | TFLOP/s | peak MiB "
            "| vs fp32 eager | vs bf16 eager |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in benches:
            extra, stats = b["extra_info"], b["stats"]
            key = (extra["shape"], extra["mode"])
            lines.append(
                f"| {extra['shape']} | {extra['mode']} | {extra['provider']} | {_fmt(stats['mean'] * 1e3)} | "
                f"{_fmt(stats['median'] * 1e3)} | {_fmt(stats['stddev'] * 1e3)} | {stats['rounds']} | "
                f"{_fmt(extra.get('gbps'))} | {_fmt(extra.get('tflops'))} | "
                f"{_fmt(extra.get('peak_mib'))} | {_ratio(means.get((*key, 'reference-fp32')), stats['mean'])} | "
                f"{_ratio(means.get((*key, 'reference-bf16')), stats['mean'])} |"
            )
    # suites without the op layout (decoding, sampler, evaluation): their own extra_info, as recorded
    for group, benches in sorted(by_group.items()):
        lines += [
            "",
            f"## {group}",
            "",
            "| case | mean ms | median ms | stddev ms | rounds | recorded |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for b in sorted(benches, key=lambda b: b["name"]):
            stats = b["stats"]
            recorded = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in b["extra_info"].items())
            lines.append(
                f"| {b['name']} | {_fmt(stats['mean'] * 1e3)} | {_fmt(stats['median'] * 1e3)} | "
                f"{_fmt(stats['stddev'] * 1e3)} | {stats['rounds']} | {recorded} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="file written by pytest --benchmark-json")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    if not args.json.is_file():
        raise FileNotFoundError(f"benchmark JSON {args.json} does not exist; run pytest with --benchmark-json first")
    args.out.write_text(render(json.loads(args.json.read_text())))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

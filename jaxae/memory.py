"""Memory: how many seeds a device holds at once.

A program's peak bytes per device are `fixed + per_seed x seeds per device`, measured by XLA's
memory analysis of the program compiled for a few seeds (`MemoryPlan`, `plan_batches`); when all
seeds would not fit in the budget (`device_memory_budget`), `runner.train_seeds` and
`runner.evaluate_seeds` run them in equal batches that do, through one compiled program.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

# Bytes per device one batch may take, e.g. "6GiB", "512MiB" or "2e9"; unset, the budget follows
# from the device (see `device_memory_budget`). `train_seeds(memory_budget=...)` takes precedence.
MEMORY_BUDGET_ENV = "JAXAE_MEMORY_BUDGET"
# Of an accelerator's memory (`bytes_limit`), the share a batch may take; XLA keeps some for itself.
DEVICE_MEMORY_FRACTION = 0.8
# Of the host's available memory, the share the batches of this process's CPU devices may take
# together: the host also keeps every seed's state, history and data, and the analysis copies them.
HOST_MEMORY_FRACTION = 0.5
# Seeds per device of the program compiled to measure the bytes of one seed. XLA:CPU picks its
# kernels by shape, and at small seed counts per device a seed's result can differ in the last bit
# between size classes (seen: 1-8, 9-99 and 100 or more seeds of a plain run; a lone seed with
# arms), so the probe is compiled at a count like a large run's, whose memory it extrapolates.
PROBE_SEEDS = 128

_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str, name: str = MEMORY_BUDGET_ENV) -> int:
    """`"6GiB"`, `"512MiB"`, `"8G"`, `"2e9"` as bytes (K, M, G, T: powers of 1000; KiB, MiB, GiB,
    TiB: of 1024); `ValueError` naming `name` otherwise."""
    number, unit = r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)", r"(?:([kmgt])(i)?b?|(b))?"
    match = re.fullmatch(rf"\s*{number}\s*{unit}\s*", text.lower())
    value = 0.0
    if match:
        unit = match.group(2) or match.group(4) or ""
        base = 1024 ** " kmgt".index(unit) if match.group(3) else _BYTE_UNITS[unit]
        value = float(match.group(1)) * base
    if value < 1:
        raise ValueError(
            f"{name}={text!r} is invalid: allowed is a positive number of bytes, e.g. 6GiB, "
            "512MiB, 8G or 2e9"
        )
    return int(value)


def host_available_bytes() -> int:
    """Memory this process may still take: the kernel's MemAvailable, or less under a cgroup
    (container) limit."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def device_memory_budget(devices: Sequence[jax.Device], budget: int | None = None) -> int:
    """Bytes one device may take for one batch of seeds.

    `budget` if given, else `$JAXAE_MEMORY_BUDGET`, else on an accelerator
    `DEVICE_MEMORY_FRACTION` of its memory, on CPU `HOST_MEMORY_FRACTION` of the host's available
    memory shared among this process's CPU devices (they all live in it).
    """
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise ValueError(f"memory_budget={budget!r} is invalid: allowed is a positive integer")
        return budget
    if os.environ.get(MEMORY_BUDGET_ENV):
        return parse_bytes(os.environ[MEMORY_BUDGET_ENV])
    local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    stats = local[0].memory_stats() or {}
    if local[0].platform != "cpu" and "bytes_limit" in stats:
        return int(DEVICE_MEMORY_FRACTION * stats["bytes_limit"])
    return int(HOST_MEMORY_FRACTION * host_available_bytes() / len(local))


def program_bytes(compiled: jax.stages.Compiled) -> int | None:
    """Bytes one device holds while `compiled` runs, from XLA's memory analysis: arguments, outputs
    not aliased to (donated) arguments, temporaries and code; None where the backend has none."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
        + m.generated_code_size_in_bytes
    )


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How one program's seeds are split into batches that fit a device.

    Peak bytes per device are modelled as `fixed_bytes + per_seed_bytes * seeds per device`, from
    one compilation at `probe_seeds` seeds per device (`fixed_bytes` is what does not grow with
    seeds: the shared data set). Batches are equal, `seeds_per_device` on every device.
    """

    n_seeds: int
    n_devices: int
    fixed_bytes: int  # per device
    per_seed_bytes: float  # per device and seed on it; NaN where the backend has no analysis
    budget_bytes: int  # per device
    seeds_per_device: int  # in one batch
    probe_seeds: int

    @property
    def batch_seeds(self) -> int:
        return self.seeds_per_device * self.n_devices

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_seeds / self.batch_seeds)

    def bytes_at(self, seeds_per_device: int) -> float:
        """Estimated peak bytes per device of the program at `seeds_per_device`."""
        return self.fixed_bytes + self.per_seed_bytes * seeds_per_device

    def to_dict(self) -> dict[str, Any]:
        """The plan as metrics.json records it (bytes per device)."""
        return {
            "budget_bytes": self.budget_bytes,
            "fixed_bytes": self.fixed_bytes,
            "per_seed_bytes": self.per_seed_bytes,
            "all_seeds_bytes": self.bytes_at(math.ceil(self.n_seeds / self.n_devices)),
            "batch_bytes": self.bytes_at(self.seeds_per_device),
            "batch_seeds": self.batch_seeds,
            "batches": self.n_batches,
            "devices": self.n_devices,
        }


def plan_batches(
    compile_at: Callable[[int], jax.stages.Compiled],
    *,
    n_seeds: int,
    n_devices: int,
    fixed_bytes: int,
    budget: int,
) -> tuple[MemoryPlan, jax.stages.Compiled]:
    """The batches of a program and the program compiled for one batch.

    `compile_at(p)` compiles it for `p` seeds per device. It is compiled once at
    `min(seeds per device, PROBE_SEEDS)` to measure the bytes per seed, and again for the batch if
    that differs, so a program too large for the device is never compiled whole. The batches are
    the fewest that fit `budget`, of equal size (the last padded).
    """
    per_device = math.ceil(n_seeds / n_devices)
    probe = min(per_device, PROBE_SEEDS)
    compiled = compile_at(probe)
    peak = program_bytes(compiled)
    per_seed = float("nan") if peak is None else max(peak - fixed_bytes, 0) / probe
    fit = per_device
    if peak is not None and per_seed > 0:
        fit = int((budget - fixed_bytes) // per_seed)
    if fit < 1:
        raise ValueError(
            f"memory budget={budget} bytes per device is invalid: allowed is at least "
            f"{math.ceil(fixed_bytes + per_seed)}, what one seed of this program takes (set it "
            f"with {MEMORY_BUDGET_ENV} or memory_budget)"
        )
    n_batches = math.ceil(per_device / min(fit, per_device))
    seeds = math.ceil(per_device / n_batches)  # equal batches, the least padding
    plan = MemoryPlan(n_seeds, n_devices, fixed_bytes, per_seed, budget, seeds, probe)
    return plan, compiled if seeds == probe else compile_at(seeds)


def peak_memory() -> dict[str, int | None]:
    """Measured peaks so far: this process's resident set (`ru_maxrss`; Linux counts KiB) and, on
    an accelerator, the first local device's bytes in use."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
    }

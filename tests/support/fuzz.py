"""Structure-aware fuzzing of the decoder: well-formed hostile files, decoded in watched child processes.

Mutations act on the fields of a valid file and the checksum is recomputed, so every ``.dcvic`` file gets past
the CRC and reaches the size limits, the string-length check, the rANS decoders and the networks: random
bytes in the z/y strings, swapped strings, strings from another image or another model, lengths off by one,
zero, tiny, huge and extreme sizes, betas at and beyond their bounds, other quality indices, versions and
fingerprints. The authors' legacy ``.bin`` layout (no checksum) gets the same, plus raw damage.

Files are decoded in batches by one child process (``python -m tests.support.fuzz``) under ``RLIMIT_AS``,
with a per-file alarm and a watchdog in the parent: a hang or a crash (signal, traceback) costs only that
file, and a fresh child continues with the next one.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import re
import resource
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BETA_EDGES = {
    "beta_rate": (0.0, -0.0, 3.0, float(struct.unpack(">f", struct.pack(">I", 0x40400001))[0]), 3.5, -1e-45),
    "beta_vq": (0.0, 3.5, float(struct.unpack(">f", struct.pack(">I", 0x40600001))[0]), 4.0, -1.0),
}
EXTREME_FLOATS = (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-40)
UINT32_SIZES = (0, 1, 2, 15, 16, 17, 63, 64, 65, 255, 4095, 65535, 65536, 30000, 32768, 2**31, 2**32 - 1)
UINT16_SIZES = (0, 1, 2, 15, 16, 17, 63, 64, 65, 255, 4095, 30000, 65535)


@dataclass(frozen=True)
class Sample:
    kind: str
    legacy: bool
    data: bytes


@dataclass(frozen=True)
class Source:
    """One valid file's parts: image size and the two strings (z written with 1.2.4 tables for legacy)."""

    height: int
    width: int
    z_string: bytes
    y_string: bytes
    z_string_124: bytes


@dataclass
class Sources:
    fingerprint: bytes
    own: list[Source]
    foreign: list[Source]
    """Files of another model (other widths), for strings the loaded model never wrote."""


# --- generating hostile files ---


def _string(rng: random.Random, string: bytes, sources: Sources) -> tuple[str, bytes]:
    kind = rng.randrange(7)
    if kind == 0 and string:  # random bytes over a span
        start = rng.randrange(len(string))
        span = rng.randint(1, len(string) - start)
        return "random span", string[:start] + rng.randbytes(span) + string[start + span :]
    if kind == 1:
        return "all random", rng.randbytes(len(string))
    if kind == 2:  # mostly whole 4-byte words, so that the garbage reaches the rANS decoder
        length = rng.randrange(0, 2 * len(string) + 16)
        return "random length", rng.randbytes(length if rng.random() < 0.2 else length // 4 * 4)
    if kind == 3:
        return "truncated", string[: rng.randrange(len(string) + 1)]
    if kind == 4:
        return "extended", string + rng.randbytes(rng.choice((1, 3, 4, 8, 64)))
    if kind == 5:
        return "constant", bytes([rng.choice((0, 0xFF, 0xF0, 0x0F))]) * rng.choice((len(string), 8, 4096))
    other = rng.choice(sources.own + sources.foreign)
    return "other file's", rng.choice((other.z_string, other.y_string))


def _size(rng: random.Random, height: int, width: int, extremes: tuple[int, ...]) -> tuple[str, int, int]:
    """Another size the header can hold (``extremes[-1]`` is its largest value)."""
    kind = rng.randrange(4)
    if kind == 0:
        kind_name, height, width = "extreme size", rng.choice(extremes), rng.choice(extremes)
    elif kind == 1:
        kind_name, height, width = "size off by one", height + rng.choice((-1, 1)), width + rng.choice((-1, 1))
    elif kind == 2:
        kind_name, height, width = "size scaled", height * rng.choice((2, 3, 4)), width * rng.choice((1, 2))
    else:
        kind_name, height, width = "zero side", rng.choice((0, height)), 0
    return kind_name, min(max(height, 0), extremes[-1]), min(max(width, 0), extremes[-1])


def _dcvic_fields(rng: random.Random, sources: Sources) -> tuple[list[str], dict]:
    source = rng.choice(sources.own)
    fields = dict(
        fingerprint=sources.fingerprint,
        height=source.height,
        width=source.width,
        quality_index=2,
        beta_rate=1.12,
        beta_vq=2.0,
        z_string=source.z_string,
        y_string=source.y_string,
    )
    kinds: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        choice = rng.randrange(10)
        if choice < 3:
            name = rng.choice(("z_string", "y_string"))
            kind, fields[name] = _string(rng, fields[name], sources)
            kinds.append(f"{name[0]}: {kind}")
        elif choice == 3:
            fields["z_string"], fields["y_string"] = fields["y_string"], fields["z_string"]
            kinds.append("swapped strings")
        elif choice == 4:
            other = rng.choice(sources.own + sources.foreign)
            fields.update(z_string=other.z_string, y_string=other.y_string)
            kinds.append("strings of another image/model")
        elif choice == 5:
            kind, fields["height"], fields["width"] = _size(rng, fields["height"], fields["width"], UINT32_SIZES)
            kinds.append(kind)
        elif choice == 6:
            name = rng.choice(("beta_rate", "beta_vq"))
            fields[name] = rng.choice(BETA_EDGES[name] + EXTREME_FLOATS)
            kinds.append(f"{name} edge")
        elif choice == 7:
            fields["quality_index"] = rng.randrange(256)
            kinds.append("quality index")
        elif choice == 8:
            fields["fingerprint"] = rng.randbytes(16) if rng.random() < 0.5 else fields["fingerprint"]
            kinds.append("fingerprint")
        else:
            kinds.append("length off by one")
    return kinds, fields


def dcvic_sample(rng: random.Random, sources: Sources) -> Sample:
    from lightning_modules.codec.container import Container

    kinds, fields = _dcvic_fields(rng, sources)
    data = Container(**fields).to_bytes()
    if "length off by one" in kinds:
        body = bytearray(data[:-4])
        at = 38 if rng.random() < 0.5 else 42 + len(fields["z_string"])
        (length,) = struct.unpack_from(">I", body, at)
        struct.pack_into(">I", body, at, max(0, length + rng.choice((-1, 1))))
        data = bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
    if rng.random() < 0.03:  # another format version, checksum still valid
        body = bytearray(data[:-4])
        body[4] = rng.choice((0, 2, 255))
        data = bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
        kinds.append("version")
    return Sample(" + ".join(kinds), False, data)


def legacy_sample(rng: random.Random, sources: Sources) -> Sample:
    from lightning_modules.codec.container import write_legacy

    source = rng.choice(sources.own)
    height, width, max_abs, quality = source.height, source.width, 0, rng.randrange(5)
    strings = [source.z_string_124, source.y_string]
    kinds: list[str] = []
    for _ in range(rng.choice((1, 1, 2))):
        choice = rng.randrange(7)
        if choice < 3:
            index = rng.randrange(2)
            kind, strings[index] = _string(rng, strings[index], sources)
            kinds.append(f"{'zy'[index]}: {kind}")
        elif choice == 3:
            strings.reverse()
            kinds.append("swapped strings")
        elif choice == 4:
            kind, height, width = _size(rng, height, width, UINT16_SIZES)
            kinds.append(kind)
        elif choice == 5:
            quality, max_abs = rng.randrange(256), rng.randrange(256)
            kinds.append("quality index")
        else:
            kinds.append("raw layout")
    data = write_legacy(height, width, max_abs, quality, *strings)
    if "raw layout" in kinds:
        data = _raw_legacy_damage(rng, data)
    return Sample(" + ".join(kinds), True, data)


def _raw_legacy_damage(rng: random.Random, data: bytes) -> bytes:
    """Lengths off by one, a header string of the wrong size, a fourth string, or bit flips anywhere."""
    out = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        at = rng.choice((0, 10, 14 + struct.unpack_from("<I", out, 10)[0]))
        struct.pack_into("<I", out, at, max(0, struct.unpack_from("<I", out, at)[0] + rng.choice((-1, 1))))
    elif kind == 1:
        return struct.pack("<I", 7) + bytes(out[4:10]) + b"\0" + bytes(out[10:])
    elif kind == 2:
        return bytes(out) + struct.pack("<I", 3) + b"abc"
    else:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def make_samples(seed: int, dcvic_count: int, legacy_count: int, sources: Sources) -> list[Sample]:
    rng = random.Random(seed)
    return [dcvic_sample(rng, sources) for _ in range(dcvic_count)] + [
        legacy_sample(rng, sources) for _ in range(legacy_count)
    ]


def make_sources(model_path: Path, foreign_model_path: Path, sizes: list[tuple[int, int]]) -> Sources:
    """Valid files of the fuzzed model at several sizes and betas, and of a foreign model."""
    from lightning_modules.codec.image_codec import DCVICCodec, resolve_conditioning
    from lightning_modules.images import image_to_tensor
    from lightning_modules.model_file import load_model_file
    from lightning_modules.networks.entropy_models import entropy_bottleneck_124
    from tests.support.codec_models import photo

    def sources_of(path: Path) -> tuple[bytes, list[Source]]:
        codec = DCVICCodec.from_model_file(load_model_file(path))
        eb_124 = entropy_bottleneck_124(codec.model.entropy_model_z)
        found = []
        for i, (height, width) in enumerate(sizes):
            name = ("astronaut", "coffee", "chelsea", "rocket")[i % 4]
            conditioning = resolve_conditioning(codec.quality_table, i % 5)
            _, code = codec.compress(image_to_tensor(photo(name, height, width, top=20, left=30)), conditioning)
            z_124 = eb_124.compress(code.z_hat)[0]
            found.append(Source(height, width, code.z_string, code.y_string, z_124))
        return codec.fingerprint, found

    fingerprint, own = sources_of(model_path)
    _, foreign = sources_of(foreign_model_path)
    return Sources(fingerprint, own, foreign)


# --- decoding them under watch ---


@dataclass
class Report:
    outcomes: Counter = field(default_factory=Counter)
    refusal_reasons: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    slowest_seconds: float = 0.0
    slowest_kind: str = ""
    peak_rss_bytes: int = 0
    children: int = 0

    def add(self, sample: Sample, result: dict) -> None:
        outcome = result["outcome"]
        self.outcomes[outcome] += 1
        family = ("legacy" if sample.legacy else "dcvic") + ": " + outcome
        self.by_kind.setdefault(family, Counter())[sample.kind.split(" + ")[0]] += 1
        if outcome.startswith("refused"):
            self.refusal_reasons[re.sub(r"-?[\d.,]+|\(.*", "#", result["detail"])[:70]] += 1
        if outcome in ("crash", "hang", "unexpected error", "broken image"):
            self.failures.append({"kind": sample.kind, "legacy": sample.legacy, **result})
        if result.get("seconds", 0) > self.slowest_seconds:
            self.slowest_seconds, self.slowest_kind = result["seconds"], sample.kind
        self.peak_rss_bytes = max(self.peak_rss_bytes, result.get("peak_rss_bytes", 0))

    def summary(self) -> dict:
        return {
            "files": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes),
            "refusal_reasons": dict(self.refusal_reasons.most_common()),
            "failures": self.failures[:20],
            "slowest_file_seconds": round(self.slowest_seconds, 3),
            "slowest_file_kind": self.slowest_kind,
            "largest_peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
            "child_processes": self.children,
            "by_first_mutation": {k: dict(v) for k, v in sorted(self.by_kind.items())},
        }


def run_campaign(
    model_path: Path, samples: list[Sample], per_file_seconds: float, address_headroom_bytes: int
) -> Report:
    """Decode every sample; a child that hangs or dies is replaced and the campaign goes on after that file."""
    report = Report()
    position = 0
    with tempfile.TemporaryDirectory() as work:
        while position < len(samples):
            report.children += 1
            stderr_path = Path(work) / f"child_{report.children}.stderr"
            position = _run_child(
                model_path, samples, position, per_file_seconds, address_headroom_bytes, stderr_path, report
            )
            if "Traceback" in stderr_path.read_text(errors="replace"):
                report.outcomes["traceback"] += 1
                report.failures.append({"outcome": "traceback", "stderr": stderr_path.read_text()[-2000:]})
    return report


def _run_child(
    model_path: Path,
    samples: list[Sample],
    start: int,
    per_file_seconds: float,
    address_headroom_bytes: int,
    stderr_path: Path,
    report: Report,
) -> int:
    """One child decodes ``samples[start:]`` in order; returns the index after the last file it settled."""
    command = [sys.executable, "-m", "tests.support.fuzz", str(model_path), str(per_file_seconds)]
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [*command, str(address_headroom_bytes)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        child.stdin.write(pickle.dumps([(s.legacy, s.data) for s in samples[start:]]))
        child.stdin.close()
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        position, timeout = start, 300.0 + per_file_seconds  # the first line also waits for the model to load
        while position < len(samples):
            if not selector.select(timeout):
                child.kill()
                child.wait()
                report.add(samples[position], {"outcome": "hang", "seconds": timeout})
                return position + 1
            line = child.stdout.readline()
            if not line:
                code = child.wait()
                if code == 0:
                    raise RuntimeError(f"the fuzz child stopped early at file {position}")
                report.add(samples[position], {"outcome": "crash", "exit_status": code})
                return position + 1
            message = json.loads(line)
            if "ready" not in message:
                report.add(samples[position], message)
                position += 1
            timeout = per_file_seconds + 30.0
        child.wait()
        return position


def _worker(model_path: str, per_file_seconds: float, address_headroom_bytes: int) -> None:
    """Child side: load the model, limit the address space, decode each file under an alarm, one JSON line each."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from lightning_modules.codec.container import BitstreamError
    from lightning_modules.codec.image_codec import DCVICCodec
    from lightning_modules.images import tensor_to_image
    from lightning_modules.model_file import load_model_file

    torch.set_num_threads(1)
    batch = pickle.loads(sys.stdin.buffer.read())
    codec = DCVICCodec.from_model_file(load_model_file(model_path))
    limit = _status_bytes("VmSize") + address_headroom_bytes  # what the loaded model already maps, plus headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def expire(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, expire)
    print(json.dumps({"ready": True}), flush=True)
    for legacy, data in batch:
        Path("/proc/self/clear_refs").write_text("5")  # per-file peak RSS (VmHWM)
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, per_file_seconds)
        try:
            x_hat = codec.decompress_legacy(data)[0] if legacy else codec.decompress(data)
            image = tensor_to_image(x_hat)
            outcome = "decoded" if image.ndim == 3 and image.shape[2] == 3 else "broken image"
            detail = f"{image.shape[0]}x{image.shape[1]}"
        except BitstreamError as exc:
            outcome, detail = f"refused: {type(exc).__name__}", str(exc)
        except TimeoutError:
            outcome, detail = "hang", f"over {per_file_seconds} s"
        except Exception as exc:  # noqa: BLE001 - counted and reported: the test requires zero of these
            outcome, detail = "unexpected error", f"{type(exc).__name__}: {exc}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - start
        peak = _status_bytes("VmHWM")
        print(json.dumps({"outcome": outcome, "detail": detail[:300], "seconds": seconds, "peak_rss_bytes": peak}))
        sys.stdout.flush()


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    _worker(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))

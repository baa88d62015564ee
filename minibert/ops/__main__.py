"""``python -m minibert.ops``: which implementation each op runs on each device, and why (``backend_info()``).

``python -m minibert.ops --json`` prints ``backend_info()`` itself.
"""
import json
import sys

from minibert.ops import backend_info


def why(info: dict, device: str, backend: str) -> str:
    """One line: why ``backend`` ("fused" or "eager") runs on ``device``."""
    dtypes = ", ".join(info["kernel_dtypes"][device])
    if backend == "fused":
        return f"kernel in the {info['how']} extension ({dtypes}; other dtypes fall back to eager per call)"
    if info["backend"] == "eager":
        return f"no extension: {info['reason']}"
    if device == "cuda":
        return ("the extension was built without CUDA kernels" + ("" if info["cuda_device_present"]
                                                                   else "; no GPU here either"))
    return "no kernel for this device"


def table(info: dict) -> str:
    """The op x device table, with the extension's origin on top."""
    lines = [f"extension: {info['how']} ({info['reason']})" + (f"\n  {info['extension_path']}"
                                                               if info["extension_path"] else "")]
    rows = [(op, device, backend, why(info, device, backend))
            for op, per_device in info["ops"].items() for device, backend in per_device.items()]
    width = max(len(op) for op, *_ in rows)
    lines.append(f"{'op':<{width}}  device  backend  why")
    lines += [f"{op:<{width}}  {device:<6}  {backend:<7}  {reason}" for op, device, backend, reason in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    info = backend_info()
    print(json.dumps(info, indent=2) if "--json" in sys.argv[1:] else table(info))

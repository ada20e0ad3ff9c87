"""A short tour of the emulation: ``python -m emulation``."""

import numpy as np

import emulation as em


def main() -> None:
    print("e2m1 codes 0..7:", em.decode(np.arange(8), "e2m1").tolist())
    block = np.zeros((1, 32), np.float32)
    block[0, :4] = [6.5, -4.875, 0.3, 1e-3]
    print("\nMXFP4 of a block with amax 6.5 (NUMERICS.md section 2):")
    for mode in em.ScaleMode:
        packed, scale = em.quantize_mxfp4(block, scale_mode=mode)
        deq = em.dequantize_mxfp4(packed, scale)[0, :4]
        print(f"  {mode.value:10s} scale byte {int(scale[0, 0]):3d} -> {deq.tolist()}")
    x = np.array([[6.5, -4.875]], np.float32)
    for reciprocal in (False, True):
        codes, s = em.quantize_fp8_per_token(x, reciprocal=reciprocal)
        how = "x * (1/s)" if reciprocal else "x / s    "
        print(f"\nfp8 e4m3fn per token, {how}: codes {[hex(c) for c in codes[0]]}, scale {s[0, 0]:.8g}", end="")
    print("\n\nfp32 -> e4m3fn, satfinite vs OCP (ml_dtypes):")
    for v in (464.0, 465.0, np.inf, np.nan):
        sat = em.encode(np.float32(v), "e4m3fn")
        ocp = em.encode(np.float32(v), "e4m3fn", overflow="ocp")
        print(f"  {v!s:>6}: satfinite 0x{int(sat):02X}  ocp 0x{int(ocp):02X}")


if __name__ == "__main__":
    main()

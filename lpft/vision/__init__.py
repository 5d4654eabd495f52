from lpft.vision.linear_probe import LinearProbeResult, linear_probe

__all__ = ["linear_probe", "LinearProbeResult"]

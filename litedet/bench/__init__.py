"""Direct metrics on the device: latency, throughput, memory, energy, beside peers.

``harness`` (timing, interleaving, background load), ``machine`` (measured peak, versions),
``energy`` (NVML / RAPL or "not available"), ``profile`` (params, FLOPs, MAC, activations),
``peers`` (other detectors by name), ``run`` / ``api`` (``run_benchmark``), ``report``
(Markdown, JSON, PNG), ``guidelines`` (ShuffleNetV2 §2 experiments). Nothing is imported here,
so ``import litedet.bench`` stays light.
"""

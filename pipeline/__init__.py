"""qbnn's pipeline: one sub-package per stage, plus the command line.

- :mod:`qbnn.pipeline.quantize` — static int8 with INC / ONNX Runtime, posterior intact
- :mod:`qbnn.pipeline.validate` — uncertainty metrics, side-by-side comparison, gates, report
- :mod:`qbnn.pipeline.bench` — latency, throughput and memory over a (batch, S) grid
- :mod:`qbnn.pipeline.run` — export -> quantize -> validate -> bench from one config, manifest
- :mod:`qbnn.pipeline.cli` — the ``qbnn`` command (one module per command)
- :mod:`qbnn.pipeline.common` — config (de)serialization and file I/O shared by the stages

``configs/`` holds the shipped YAML files (demo pipeline, default gates, quantization).
"""

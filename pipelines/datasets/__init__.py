"""Parsers of the real datasets' annotation files into typed records (METHODS §6); one module per family.

- `pipelines.datasets.wtal`: THUMOS14 and ActivityNet1.2 ground truth (ActivityNet-style ``database`` JSON), class
  lists, video-level labels, snippet-level ground truth, and ActivityNet-format prediction files.
- `pipelines.datasets.grounding`: Charades-STA and ActivityNet Captions sentence-grounding queries.
"""

"""Evaluation protocols: how a paper's predictions are scored against a benchmark's ground truth, one function each,
shared by the DAGs and the ``vlrepro eval`` commands so a DAG's numbers are the ones a user gets by hand."""

"""The benchmarks of ``rdiff bench``: :mod:`rdiff_bench.real_data` scores a user's own folders of real images
(split by subject, test images scored whole)."""

"""Coverage-guided fuzzing of the parsers and data planes (not part of the product).

* fuzz/c/   libFuzzer harnesses, built with clang under AddressSanitizer + UBSan, linking the
            project's own C sources (shim_c/, relay/fastpath/);
* fuzz/py/  atheris harnesses for the Python parsers and the Python data plane;
* fuzz/corpus/<harness>/       initial inputs (`python -m fuzz init` makes them from the vectors)
                               plus inputs merged in after long runs;
* fuzz/regressions/<harness>/  inputs that once crashed, hung or used too much memory.

`make fuzz` (python -m fuzz run) fuzzes every harness for FUZZ_SECONDS; `make test` runs every
harness once over its corpus and regressions (tests/unit/test_fuzz_corpus.py).
"""

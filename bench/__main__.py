"""`python -m bench [NAME ...]`: run the benchmarks (all by default)."""

import sys

from bench import deletion, discovery, job_claims, load, overview, page_load, rpc_throughput, session_sizing

BENCHMARKS = {"sizing": session_sizing.main, "throughput": rpc_throughput.main, "deletion": deletion.main,
              "claims": job_claims.main, "page": page_load.main, "load": load.main,
              "discovery": discovery.main, "overview": overview.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()

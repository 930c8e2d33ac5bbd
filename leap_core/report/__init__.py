"""Every markdown leap writes is rendered here, from the JSON its command wrote (so each report rebuilds).

Importing this package loads nothing: each report is a module of its own.

    pipeline_report.py   the flow's report: every arm's numbers, seed intervals, the paper's claims, figures
    aggregate.py  claims.py  document.py  figures.py  verify.py   its parts
    markdown.py          number and table formatting, shared by every report
    tables.py            what `leap eval`, `leap diagnose` and `leap mteb` print
    eval_report.py       `leap eval-suite`
    bench_report.py  deploy_report.py  int8_report.py   latency, serving paths, int8
    pareto_report.py  asymmetric_report.py  retrofit_report.py   operating points, query routes, retrofits
    monitor_report.py  retrain_report.py  query_loop_report.py   drift checks and the retrain loops
    query_encoder_report.py   reports/query_encoder.md and the README's search table
    reliability_report.py     `leap reliability`
"""

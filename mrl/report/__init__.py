"""Reports: per-run tables and plots (:mod:`~mrl.report.run_tables`); a study's report, from its files
(:mod:`~mrl.report.inputs`) collected into a study (:mod:`~mrl.report.study`), turned into tables
(:mod:`~mrl.report.tables`), plots (:mod:`~mrl.report.plots`) and findings (:mod:`~mrl.report.findings`), and
written (:mod:`~mrl.report.write`); comparisons across runs and W&B groups (:mod:`~mrl.report.compare`)."""

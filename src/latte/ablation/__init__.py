"""`latte ablate`: the paper's design study as ordinary training runs (studies, runner, evaluation, report, plot)."""

"""The study: a grid of runs (scratch vs pre-trained, schedules, data sizes, hyper-parameters) and its report."""

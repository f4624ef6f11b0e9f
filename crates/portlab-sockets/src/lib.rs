//! Socket table, port-pool settings and kernel counters of a Linux host (under construction).

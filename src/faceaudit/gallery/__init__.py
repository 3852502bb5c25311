"""The gallery: enrol, search 1:N and erase, purpose-bound, consented, encrypted, with a tamper-evident log."""

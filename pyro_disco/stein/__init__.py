"""Stein discrepancies: kernel Stein discrepancy (U/V statistics) and a goodness-of-fit test."""

from pyro_disco.stein.ksd import KSDTestResult, ksd, ksd_test, stein_kernel, stein_kernel_matrix

__all__ = ["KSDTestResult", "ksd", "ksd_test", "stein_kernel", "stein_kernel_matrix"]

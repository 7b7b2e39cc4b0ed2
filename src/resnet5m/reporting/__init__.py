"""Reporting: aggregation over seeds, tables, plots and the HTML report."""

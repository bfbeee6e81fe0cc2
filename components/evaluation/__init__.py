"""Evaluation step: metrics for every task (full-ranking retrieval, candidate lists, CTR, rating, text,
prompt sensitivity), computed under the RecBole protocol of DESIGN.md §3 (leave-one-out, full ranking over
all items with the user's earlier items excluded). `metrics` holds the pure metric functions."""

"""Model-zoo evaluation: perplexity, logit agreement, throughput and memory per attention impl."""

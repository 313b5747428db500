"""Server-side strategies: one module per method, each a Flower Message-API Strategy."""

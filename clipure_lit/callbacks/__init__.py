"""Lightning callbacks: results files, robust evaluation."""

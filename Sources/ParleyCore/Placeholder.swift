// ParleyCore module

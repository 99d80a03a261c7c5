// ParleyStore module

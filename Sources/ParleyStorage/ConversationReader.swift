import ParleyCore

extension HistoryBound {
    /// The bound as an SQL condition over the `time` column and the column that holds the
    /// storage order, with its values in order (both backends' placeholders are `?`).
    public func sqlCondition(orderColumn: String) -> (sql: String, values: [Int64]) {
        switch self {
        case .after(let point):
            guard let order = point.order else { return ("time > ?", [point.time]) }
            return ("(time > ? OR (time = ? AND \(orderColumn) > ?))", [point.time, point.time, order])
        case .before(let point):
            guard let order = point.order else { return ("time < ?", [point.time]) }
            return ("(time < ? OR (time = ? AND \(orderColumn) < ?))", [point.time, point.time, order])
        case .from(let instant):
            return ("time >= ?", [instant])
        }
    }
}

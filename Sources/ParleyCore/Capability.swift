/// The IRCv3 capabilities Parley offers. Bits in a `CapabilitySet` so the per-message checks on
/// the hot path are single AND operations.
public enum Capability: Int, Sendable, CaseIterable {
    case messageTags, serverTime, echoMessage, labeledResponse, batch, standardReplies, sasl
    case accountTag, accountNotify, awayNotify, capNotify, multiPrefix, userhostInNames
    case extendedJoin, setname, extendedMonitor, accountRegistration, channelRename
    case readMarker, chathistory, receipts, metadata, messageRedaction, eventPlayback

    public var name: String {
        switch self {
        case .messageTags: "message-tags"
        case .serverTime: "server-time"
        case .echoMessage: "echo-message"
        case .labeledResponse: "labeled-response"
        case .batch: "batch"
        case .standardReplies: "standard-replies"
        case .sasl: "sasl"
        case .accountTag: "account-tag"
        case .accountNotify: "account-notify"
        case .awayNotify: "away-notify"
        case .capNotify: "cap-notify"
        case .multiPrefix: "multi-prefix"
        case .userhostInNames: "userhost-in-names"
        case .extendedJoin: "extended-join"
        case .setname: "setname"
        case .extendedMonitor: "extended-monitor"
        case .accountRegistration: "draft/account-registration"
        case .channelRename: "draft/channel-rename"
        case .readMarker: "draft/read-marker"
        case .chathistory: "draft/chathistory"
        case .receipts: "parley.chat/receipts"
        case .metadata: "draft/metadata-3"
        case .messageRedaction: "draft/message-redaction"
        case .eventPlayback: "draft/event-playback"
        }
    }

    /// The value advertised in `CAP LS 302`, if any.
    public func value(saslMechanisms: [String], registrationBeforeConnect: Bool = true) -> String? {
        switch self {
        case .sasl: saslMechanisms.joined(separator: ",")
        case .accountRegistration: registrationBeforeConnect ? "before-connect" : nil
        case .metadata: MetadataLimits.capabilityValue
        default: nil
        }
    }

    static let byName: [String: Capability] = Dictionary(
        uniqueKeysWithValues: allCases.map { ($0.name.lowercased(), $0) })

    public init?(name: String) {
        guard let capability = Self.byName[name.lowercased()] else { return nil }
        self = capability
    }
}

public struct CapabilitySet: Sendable, Hashable {
    public private(set) var bits: UInt64 = 0

    public init() {}

    /// A set as another node sent it (`bits`).
    public init(bits: UInt64) { self.bits = bits }

    public init(_ capabilities: [Capability]) {
        for capability in capabilities { insert(capability) }
    }

    public func contains(_ capability: Capability) -> Bool {
        bits & (1 << UInt64(capability.rawValue)) != 0
    }

    public mutating func insert(_ capability: Capability) {
        bits |= 1 << UInt64(capability.rawValue)
    }

    public mutating func remove(_ capability: Capability) {
        bits &= ~(1 << UInt64(capability.rawValue))
    }

    public var names: [String] {
        Capability.allCases.filter(contains).map(\.name)
    }
}

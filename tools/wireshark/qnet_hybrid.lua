-- Wireshark dissector for qnet's hybrid-packet header (nodes/net/header.py).
--
-- A UDP datagram: magic "QH", then TLVs (type u8, length u16 big-endian, value), the version
-- TLV first and the MAC TLV (type 255, HMAC-SHA256 truncated to 16 bytes) last. Registered as
-- a heuristic UDP dissector (magic + version TLV), for "Decode As...", and on the UDP ports of
-- the "qnet_hybrid.ports" preference (empty by default). The MAC is shown, not verified: the
-- dissector has no link key. Wire format: docs/protocol.md, "Network layer".
--
-- Use: tshark -X lua_script:tools/wireshark/qnet_hybrid.lua -r capture.pcapng -V

local qh = Proto("qnet_hybrid", "qnet hybrid-packet header")

local TLV_NAMES = {
    [1] = "Version", [2] = "Source", [3] = "Destination", [4] = "Flow", [5] = "Sequence",
    [6] = "TTL", [7] = "Timestamp", [8] = "Payload descriptor",
    [9] = "Polarisation reference", [255] = "MAC",
}
local FIXED = { [1] = 1, [4] = 4, [5] = 8, [6] = 1, [7] = 8, [8] = 12, [9] = 12, [255] = 16 }
local PAYLOAD_KINDS = { [0] = "none", [1] = "qubit", [2] = "half of an entangled pair" }

local f = {
    magic = ProtoField.string("qnet_hybrid.magic", "Magic"),
    tlv = ProtoField.none("qnet_hybrid.tlv", "TLV"),
    tlv_type = ProtoField.uint8("qnet_hybrid.tlv.type", "Type", base.DEC, TLV_NAMES),
    tlv_length = ProtoField.uint16("qnet_hybrid.tlv.length", "Length"),
    version = ProtoField.uint8("qnet_hybrid.version", "Version"),
    src = ProtoField.string("qnet_hybrid.src", "Source node"),
    dst = ProtoField.string("qnet_hybrid.dst", "Destination node"),
    flow = ProtoField.uint32("qnet_hybrid.flow", "Flow"),
    seq = ProtoField.uint64("qnet_hybrid.seq", "Sequence"),
    ttl = ProtoField.uint8("qnet_hybrid.ttl", "TTL"),
    timestamp = ProtoField.uint64("qnet_hybrid.timestamp_ns", "Timestamp (ns, emulated)"),
    payload_kind = ProtoField.uint8("qnet_hybrid.payload.kind", "Payload kind", base.DEC,
        PAYLOAD_KINDS),
    payload_flags = ProtoField.uint8("qnet_hybrid.payload.flags", "Payload flags", base.HEX),
    payload_lost = ProtoField.bool("qnet_hybrid.payload.lost", "Payload lost upstream", 8, nil,
        0x01),
    payload_late = ProtoField.bool("qnet_hybrid.payload.late", "Lost as late at a router", 8,
        nil, 0x02),
    payload_qubits = ProtoField.uint16("qnet_hybrid.payload.qubits", "Payload qubits"),
    payload_id = ProtoField.uint64("qnet_hybrid.payload.id", "Payload id (daemon)"),
    pol_s1 = ProtoField.float("qnet_hybrid.pol.s1", "Reference S1"),
    pol_s2 = ProtoField.float("qnet_hybrid.pol.s2", "Reference S2"),
    pol_s3 = ProtoField.float("qnet_hybrid.pol.s3", "Reference S3"),
    extension = ProtoField.bytes("qnet_hybrid.extension", "Extension value"),
    mac = ProtoField.bytes("qnet_hybrid.mac", "MAC (HMAC-SHA256/16, not verified)"),
}
qh.fields = f

local e_malformed = ProtoExpert.new("qnet_hybrid.malformed", "Malformed hybrid header",
    expert.group.MALFORMED, expert.severity.ERROR)
qh.experts = { e_malformed }

qh.prefs.ports = Pref.range("UDP ports", "", "UDP ports always decoded as qnet hybrid headers",
    65535)

local function value_fields(t, v, sub)
    if t == 1 then sub:add(f.version, v)
    elseif t == 2 then sub:add(f.src, v)
    elseif t == 3 then sub:add(f.dst, v)
    elseif t == 4 then sub:add(f.flow, v)
    elseif t == 5 then sub:add(f.seq, v)
    elseif t == 6 then sub:add(f.ttl, v)
    elseif t == 7 then sub:add(f.timestamp, v)
    elseif t == 8 then
        sub:add(f.payload_kind, v(0, 1))
        local flags = sub:add(f.payload_flags, v(1, 1))
        flags:add(f.payload_lost, v(1, 1))
        flags:add(f.payload_late, v(1, 1))
        sub:add(f.payload_qubits, v(2, 2))
        sub:add(f.payload_id, v(4, 8))
    elseif t == 9 then
        sub:add(f.pol_s1, v(0, 4))
        sub:add(f.pol_s2, v(4, 4))
        sub:add(f.pol_s3, v(8, 4))
    elseif t == 255 then sub:add(f.mac, v)
    elseif t >= 128 then sub:add(f.extension, v)
    else return false
    end
    return true
end

function qh.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    if len < 2 or tvb(0, 2):string() ~= "QH" then return 0 end
    pinfo.cols.protocol = "QNET-HYBRID"
    local root = tree:add(qh, tvb(), "qnet hybrid-packet header")
    root:add(f.magic, tvb(0, 2))
    local offset, seen, values = 2, {}, {}
    while offset < len do
        if offset + 3 > len then
            root:add_proto_expert_info(e_malformed, "truncated TLV at offset " .. offset)
            break
        end
        local t, l = tvb(offset, 1):uint(), tvb(offset + 1, 2):uint()
        if offset + 3 + l > len then
            root:add_proto_expert_info(e_malformed, "TLV type " .. t .. " runs past the end")
            break
        end
        local sub = root:add(f.tlv, tvb(offset, 3 + l))
        sub:set_text((TLV_NAMES[t] or ("Type " .. t)) .. " (" .. l .. " bytes)")
        sub:add(f.tlv_type, tvb(offset, 1))
        sub:add(f.tlv_length, tvb(offset + 1, 2))
        if seen[t] then sub:add_proto_expert_info(e_malformed, "duplicate TLV type " .. t) end
        seen[t] = true
        if FIXED[t] and FIXED[t] ~= l then
            sub:add_proto_expert_info(e_malformed, "TLV type " .. t .. " must be " .. FIXED[t]
                .. " bytes")
        elseif l > 0 then
            local v = tvb(offset + 3, l)
            if not value_fields(t, v, sub) then
                sub:add_proto_expert_info(e_malformed, "unknown TLV type " .. t)
            end
            if t == 2 or t == 3 then values[t] = v:string() end
            if t == 4 then values[t] = v:uint() end
            if t == 5 then values[t] = v:uint64() end
            if t == 6 then values[t] = v:uint() end
        end
        offset = offset + 3 + l
        if t == 255 and offset ~= len then
            root:add_proto_expert_info(e_malformed, "bytes after the MAC")
            break
        end
    end
    if not seen[255] then root:add_proto_expert_info(e_malformed, "no MAC TLV") end
    pinfo.cols.info = string.format("%s -> %s flow %s seq %s ttl %s",
        values[2] or "?", values[3] or "?", tostring(values[4] or "?"),
        tostring(values[5] or "?"), tostring(values[6] or "?"))
    return len
end

local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 6 or tvb(0, 2):string() ~= "QH" then return false end
    if tvb(2, 1):uint() ~= 1 or tvb(3, 2):uint() ~= 1 then return false end
    qh.dissector(tvb, pinfo, tree)
    return true
end

qh:register_heuristic("udp", heuristic)
local udp_port = DissectorTable.get("udp.port")
udp_port:add_for_decode_as(qh)

local registered = ""
function qh.prefs_changed()
    if registered ~= "" then udp_port:remove(registered, qh) end
    registered = tostring(qh.prefs.ports)
    if registered ~= "" then udp_port:add(registered, qh) end
end

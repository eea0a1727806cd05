import Foundation
import WarrenSupport

/// A person whose yearly events (birthday, anniversary) get a message at a local time of day
/// in their own time zone (`/v1/contacts`).
package struct Contact: Sendable, Equatable {
    package var id: UUID
    package var tenant: String
    /// The tier of the token that created it: its messages go to that tier's queue.
    package var tier: Tier
    package var firstName: String
    package var lastName: String
    package var email: String
    package var birthday: CivilDate
    package var anniversary: CivilDate?
    package var timeZone: String

    package init(id: UUID = JobID.make(), tenant: String, tier: Tier, firstName: String, lastName: String, email: String,
                 birthday: CivilDate, anniversary: CivilDate? = nil, timeZone: String) {
        self.id = id
        self.tenant = tenant
        self.tier = tier
        self.firstName = firstName
        self.lastName = lastName
        self.email = email
        self.birthday = birthday
        self.anniversary = anniversary
        self.timeZone = timeZone
    }
}

/// One kind of yearly contact event: which date of a contact it falls on, when in the local
/// day its message goes out, and what the message says. Adding a kind is one new type here
/// plus its entry in ``ContactEvents/all``; storage, firing and fire keys are shared.
package protocol ContactEventKind: Sendable {
    /// The kind's name: in `contact_events.kind`, in fire keys, and as the message's `kind`.
    var kind: String { get }
    /// Local time of day the message is sent (hour, minute).
    var localTime: (hour: Int, minute: Int) { get }
    /// The date this event recurs on for `contact` (its year is the original year), or nil
    /// when the contact has none.
    func date(of contact: Contact) -> CivilDate?
    /// The message for the event falling on `day`.
    func message(for contact: Contact, on day: CivilDate) -> (subject: String, body: String)
}

extension ContactEventKind {
    package var localTime: (hour: Int, minute: Int) { (9, 0) }

    /// The `message.send` payload for the event on `day`: `{"to","subject","body","kind"}`.
    package func payload(for contact: Contact, on day: CivilDate) -> String {
        let (subject, body) = message(for: contact, on: day)
        return #"{"to":\#(JSONText.quoted(contact.email)),"subject":\#(JSONText.quoted(subject)),"body":\#(JSONText.quoted(body)),"kind":\#(JSONText.quoted(kind))}"#
    }
}

package struct BirthdayEvent: ContactEventKind {
    package let kind = "birthday"
    package init() {}

    package func date(of contact: Contact) -> CivilDate? { contact.birthday }

    package func message(for contact: Contact, on day: CivilDate) -> (subject: String, body: String) {
        let age = day.year - contact.birthday.year
        return ("Happy birthday, \(contact.firstName)!",
                "Dear \(contact.firstName) \(contact.lastName), happy \(ordinal(age)) birthday! Have a wonderful day.")
    }
}

package struct AnniversaryEvent: ContactEventKind {
    package let kind = "anniversary"
    package init() {}

    package func date(of contact: Contact) -> CivilDate? { contact.anniversary }

    package func message(for contact: Contact, on day: CivilDate) -> (subject: String, body: String) {
        let years = day.year - (contact.anniversary?.year ?? day.year)
        return ("Happy anniversary, \(contact.firstName)!",
                "Dear \(contact.firstName) \(contact.lastName), congratulations on your \(ordinal(years)) anniversary!")
    }
}

/// The kinds of contact events Warren sends.
package enum ContactEvents {
    package static let all: [any ContactEventKind] = [BirthdayEvent(), AnniversaryEvent()]

    package static func kind(_ name: String) -> (any ContactEventKind)? { all.first { $0.kind == name } }

    /// The key a date is stored under: `month * 100 + day` (1231 for 31 December).
    package static func monthDay(_ date: CivilDate) -> Int { date.month * 100 + date.day }

    /// The stored keys of events falling on `day`: its own, and 29 February's on 28 February
    /// of a year without one.
    package static func monthDays(fallingOn day: CivilDate) -> [Int] {
        if day.month == 2, day.day == 28, !CivilDate.isLeap(day.year) { return [228, 229] }
        return [monthDay(day)]
    }
}

/// 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 22nd, 101st...
func ordinal(_ number: Int) -> String {
    let suffix: String
    switch (number % 10, number % 100) {
    case (_, 11...13): suffix = "th"
    case (1, _): suffix = "st"
    case (2, _): suffix = "nd"
    case (3, _): suffix = "rd"
    default: suffix = "th"
    }
    return "\(number)\(suffix)"
}

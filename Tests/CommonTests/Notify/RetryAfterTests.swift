import Testing
@testable import WarrenNotify
@testable import WarrenSupport

@Suite struct RetryAfterTests {
    /// 1994-11-06T08:49:37Z, RFC 9110's example date.
    let example: Int64 = 784_111_777

    func at(_ seconds: Int64) -> Timestamp { Timestamp(microseconds: seconds * 1_000_000) }

    @Test func readsDelaySeconds() {
        #expect(RetryAfter.parse("120", now: at(0)) == .seconds(120))
        #expect(RetryAfter.parse(" 0 ", now: at(0)) == .zero)
        #expect(RetryAfter.parse("99999999999999999999999", now: at(0)) == RetryAfter.longest, "absurdly long is cut")
        #expect(RetryAfter.parse("172800", now: at(0)) == RetryAfter.longest)
    }

    @Test func readsTheThreeHTTPDateForms() {
        #expect(RetryAfter.httpDate("Sun, 06 Nov 1994 08:49:37 GMT") == example)
        #expect(RetryAfter.httpDate("Sunday, 06-Nov-94 08:49:37 GMT") == example)
        #expect(RetryAfter.httpDate("Sun Nov  6 08:49:37 1994") == example)
        #expect(RetryAfter.httpDate("Tue, 29 Feb 2028 23:59:59 GMT") == 1_835_481_599)
    }

    @Test func aDateIsTheTimeFromNowAndZeroOnceItPassed() {
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:49:37 GMT", now: at(example - 30)) == .seconds(30))
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:49:37 GMT", now: at(example + 30)) == .zero)
    }

    @Test func rejectsWhatIsNeither() {
        for text in ["", "soon", "-5", "1.5", "Sun, 06 Nov 1994 08:49:37 CET", "Sun, 31 Feb 1994 08:49:37 GMT",
                     "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49 GMT"] {
            #expect(RetryAfter.parse(text, now: at(example)) == nil, "\(text)")
        }
    }
}
